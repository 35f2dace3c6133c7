"""Models on disk and in memory: the Triton-style repository and its cards, which of its models
are served, ONNX Runtime sessions and their execution provider, a version loaded and warmed, the
versions of a model served at once, and the hot reload that swaps a new version in only once it
is ready."""
