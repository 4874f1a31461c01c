"""Suite-wide settings."""

import torch

# The test models are tiny: one thread is fastest, and two pytest-xdist workers on two cores must not
# oversubscribe (with two OpenMP threads per worker on a busy machine, model tests ran 40x slower).
torch.set_num_threads(1)
