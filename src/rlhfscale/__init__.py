"""rlhfscale: run RLHF and measure how it scales."""

__version__ = "0.1.0"
