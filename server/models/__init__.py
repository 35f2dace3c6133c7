"""Models on disk and in memory: the Triton-style repository and its cards, ONNX Runtime sessions
and their execution provider, a version loaded and warmed, the versions served at once, and the
hot reload that swaps a new version in only once it is ready."""
