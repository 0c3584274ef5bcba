"""asv benchmarks of resconf (benchmark_dir in asv.conf.json); see docs/benchmarks.md."""
