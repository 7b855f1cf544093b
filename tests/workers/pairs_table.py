"""A hand-made pairs.parquet table for trainer tests, and an adapter trained on it."""

import pyarrow as pa

from orchestrator.run import artifacts

# Four short pairs, the chosen response right and the rejected one wrong.
PAIRS = [
    ("What is 6 * 7?", "6 * 7 = 42.", "6 * 7 = 36."),
    ("Name a primary colour.", "Red is a primary colour.", "Colours are nice."),
    ("What is the capital of Italy?", "Rome.", "Italy is in Europe."),
    ("Is 9 a prime number?", "No, 9 = 3 * 3.", "Yes, 9 is prime."),
]


def pairs_table(triples: list[tuple[str, str, str]], weights: list[float] | None = None) -> pa.Table:
    """Kept pairs from (prompt, chosen, rejected) triples, both responses stopped naturally."""
    weights = weights or [1.0] * len(triples)
    rows = [{"prompt_id": str(i), "prompt": p, "chosen": c, "rejected": r, "chosen_idx": 0, "rejected_idx": 1,
             "margin": 1.0, "consistency": None, "p_correct": None, "weight": w, "kept": True, "drop_reason": None,
             "chosen_finish_reason": "stop", "rejected_finish_reason": "stop"}
            for i, ((p, c, r), w) in enumerate(zip(triples, weights))]
    return pa.Table.from_pylist(rows, schema=artifacts.PAIRS)


def trained_adapter(model_path: object, out: object, lr: float):
    """An adapter trained one step on PAIRS at learning rate ``lr`` from ``model_path``, written with its canaries
    to ``out``; returns the trainer."""
    from tests import specs
    from workers.training import canaries
    from workers.training.trainer import DPOTrainerCore

    core = DPOTrainerCore(specs.training(model_path, f"dpo.learning_rate={lr}", f"dpo.micro_batch_pairs={len(PAIRS)}",
                                         out=out))
    table = pairs_table(PAIRS)
    requests = canaries.pick(table.to_pylist())
    core.save(out, core.fit(core.encode(table)), canary=(requests, core.canary_logprobs(requests)))
    return core
