"""Summed response log-probs of (prompt, response) token sequences, in one packed forward pass.

Used by the DPO trainer (policy and reference log-probs) and by the HF
engine's scorer. Sequences are packed several to a row (first-fit
decreasing, rows as wide as the longest sequence) instead of one padded row
each: every sequence restarts its position ids at 0 and no attention mask is
passed, so transformers builds a block-diagonal causal mask (sdpa, eager) or
runs variable-length attention (flash-attention) and no token attends across
sequences. Rows are never wider than the padded batch would be, so the
forward pass costs at most what padding costs, and less whenever lengths vary.
"""

from __future__ import annotations

import torch


def pack_rows(lengths: list[int], width: int) -> list[list[int]]:
    """Indices of the sequences in each row: first-fit decreasing into rows of ``width`` tokens."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if lengths[i] > width:
            raise ValueError(f"sequence {i} has {lengths[i]} tokens, more than the row width {width}")
        r = next((r for r, room in enumerate(free) if room >= lengths[i]), None)
        if r is None:
            rows.append([])
            free.append(width)
            r = len(rows) - 1
        rows[r].append(i)
        free[r] -= lengths[i]
    return rows


def sequence_logprobs(model: torch.nn.Module, seqs: list[tuple[list[int], list[int]]], device: torch.device,
                      pad_id: int = 0) -> torch.Tensor:
    """Summed log-prob of each response ``y`` given its prompt ``p``, for ``seqs = [(p, y), ...]``.

    Assumes every prompt is non-empty (the first response token is predicted
    from the prompt's last one).
    """
    lengths = [len(p) + len(y) for p, y in seqs]
    width = max(lengths)
    rows = pack_rows(lengths, width)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    # owner[r, j]: the sequence whose response token sits at j + 1 (-1: none).
    owner = torch.full((len(rows), width - 1), -1, dtype=torch.long)
    for r, members in enumerate(rows):
        off = 0
        for i in members:
            p, y = seqs[i]
            n = len(p) + len(y)
            ids[r, off : off + n] = torch.tensor(p + y)
            pos[r, off : off + n] = torch.arange(n)
            owner[r, off + len(p) - 1 : off + n - 1] = i
            off += n
        pos[r, off:] = torch.arange(width - off)  # the padding tail is a block of its own
    ids, pos, owner = ids.to(device), pos.to(device), owner.to(device)
    logits = model(input_ids=ids, position_ids=pos).logits[:, :-1]
    mask = owner >= 0
    # Only response positions go through log_softmax: saves a (rows, width, vocab) tensor.
    sel_logp = torch.log_softmax(logits[mask].float(), dim=-1)
    tok_logp = sel_logp.gather(-1, ids[:, 1:][mask].unsqueeze(-1)).squeeze(-1)
    return torch.zeros(len(seqs), device=device, dtype=tok_logp.dtype).index_add(0, owner[mask], tok_logp)


def pair_logprobs(model: torch.nn.Module, pairs: list[tuple[list[int], list[int], list[int]]], device: torch.device,
                  pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) summed log-probs of ``pairs = [(prompt, chosen, rejected), ...]``, the prompt computed once.

    Each pair is one block ``[prompt, chosen, rejected]`` of a packed row:
    the rejected tokens take the positions that follow the prompt and attend
    to the prompt and to themselves, never to the chosen tokens, so both
    responses are scored exactly as if each followed the prompt alone. The
    blocks' attention is a custom 4-D additive mask (sdpa and eager
    attention take it as is). Assumes non-empty prompts.
    """
    n = len(pairs)
    lengths = [len(p) + len(c) + len(y) for p, c, y in pairs]
    width = max(lengths)
    rows = pack_rows(lengths, width)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    allowed = torch.zeros((len(rows), width, width), dtype=torch.bool)
    src: list[int] = []  # flat (row * width + column) position whose logits predict ...
    tgt: list[int] = []  # ... this token ...
    own: list[int] = []  # ... of this response (i: chosen of pair i, n + i: its rejected)
    for r, members in enumerate(rows):
        off, base = 0, r * width
        for i in members:
            p, c, y = pairs[i]
            P, C, Y = len(p), len(c), len(y)
            a, b = off + P + C, off + P + C + Y  # the rejected block is [a, b)
            ids[r, off:b] = torch.tensor(p + c + y)
            pos[r, off:a] = torch.arange(P + C)
            pos[r, a:b] = torch.arange(P, P + Y)
            allowed[r, off:a, off:a] = torch.ones(P + C, P + C, dtype=torch.bool).tril()
            allowed[r, a:b, off : off + P] = True
            allowed[r, a:b, a:b] = torch.ones(Y, Y, dtype=torch.bool).tril()
            last_prompt = base + off + P - 1
            src += [last_prompt + j for j in range(C)] + [last_prompt] + [base + a + j for j in range(Y - 1)]
            tgt += c + y
            own += [i] * C + [n + i] * Y
            off = b
        allowed[r, torch.arange(off, width), torch.arange(off, width)] = True  # padding sees itself only
    dtype = next(model.parameters()).dtype
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min).unsqueeze(1)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device)).logits
    src_t, tgt_t, own_t = (torch.tensor(v, dtype=torch.long, device=device) for v in (src, tgt, own))
    # Only the predicting positions go through log_softmax: saves a (rows, width, vocab) tensor.
    tok = torch.log_softmax(logits.reshape(-1, logits.shape[-1])[src_t].float(), dim=-1).gather(-1, tgt_t[:, None])[:, 0]
    out = torch.zeros(2 * n, device=device, dtype=tok.dtype).index_add(0, own_t, tok)
    return out[:n], out[n:]
