"""The defaults of the Hessian computations (hess_vec_prod.py) that the command line needs
without torch: hess_vec_prod.py owns them; they live in this light module so that the
flags (and their --help) are read before torch is imported."""

DEFAULT_TOL = 1e-3       # Lanczos (ARPACK) tolerance, relative to the spectral radius
DEFAULT_CACHE_MB = 2048  # memory for the gradient graphs kept between products at a point
DEFAULT_BATCH_MB = 256   # memory for one product batch's graph
