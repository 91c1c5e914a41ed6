"""compose-reconciler: declarative GitOps for Docker Compose hosts."""

__version__ = "0.1.0"
__all__ = ["__version__"]
