"""The tool's version: one module every room may import (records, logs and ``--version`` cite it)."""

__version__ = "0.1.0"
