"""meshlb: every Ollama host runs the same node; the nodes form one fault-tolerant mesh."""

__version__ = "0.1.0"
