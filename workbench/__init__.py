"""picochat: a small-LLM training workbench (package name: workbench)."""

__version__ = "0.1.0"
