"""Retrv-R1 building blocks (METHODS §1): retrieval data, a synthetic composed-image world, the
first-stage embedder + FAISS retriever, the Information Compression Module (``compression``) and its
placeholder-token prompts (``compressed``), the reward, the reranker
prompts (``prompts``), details inspection as an agent-loop tool (``inspect``) and the four-phase CoT
teachers for activation SFT (``teacher``).

Submodules are imported lazily by their users (``compression`` needs torch, ``first_stage`` faiss);
this package itself imports nothing heavy.
"""
