"""Generated code of the `agentkv` proto package."""
