"""The ``fedveil`` command line, scenario presets and benchmarks."""
