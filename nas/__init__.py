"""qkvnas: neural-architecture search over the QKV embeddings of tiny vision transformers."""
