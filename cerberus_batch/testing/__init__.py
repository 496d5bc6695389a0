"""Generated inputs with known ground truth, for the tests, the benchmarks and the demo cohort.

`slides`: H&E-like SVS slides (`make_synthetic_slide`); `maps`: stored-form probability maps
(`synthetic_maps`). Kept in the package, as `zarr.testing` is, so benchmarks and users can make them too.
"""
