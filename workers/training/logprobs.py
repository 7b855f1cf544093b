"""Summed response log-probs in packed forward passes, each sequence scored exactly as if it were alone.

One helper, ``block_logprobs``, serves every packed pass (the trainer's
pairs and sequences, canaries, MC-dropout, the HF engine's scorer). A
*block* is a prompt followed by one or more responses; each response
attends to the prompt and to its own earlier tokens only, never to a
sibling response and never to another block. Blocks are packed several to
a row (first-fit decreasing, rows as wide as the longest block), and the
attention is given to the model as an explicit 4-D additive mask built
here, with every block's position ids restarting at 0 (a response's
positions follow its prompt). Nothing relies on the library recognising
packed sequences from position ids: transformers skips that recognition
whenever a KV cache is in use, which is on by default in eval mode and
once let a packed sequence attend to the one before it. For the same
reason no pass here ever builds a KV cache (``use_cache=False``).

Rows are never wider than a padded batch would be, so a pass costs at most
what padding costs, and less whenever lengths vary. sdpa and eager
attention take the 4-D mask as is; flash-attention kernels do not (they
would ignore it), so models loaded with them must not be scored here.
"""

from __future__ import annotations

import torch

Block = tuple[list[int], list[list[int]]]  # (prompt, responses that each follow the prompt alone)


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


def block_logprobs(model: torch.nn.Module, blocks: list[Block], device: torch.device, pad_id: int = 0) -> torch.Tensor:
    """Summed log-prob of every response of every block, flat in order (block 0's responses first).

    Each response is scored as if it followed its prompt alone, whatever
    else shares its row. Raises ValueError for an empty prompt (its first
    response token would have nothing to be predicted from). Gradients flow
    when the caller has them enabled.
    """
    if any(not p for p, _ in blocks):
        raise ValueError("every prompt needs at least one token: the first response token is predicted from it")
    lengths = [len(p) + sum(len(y) for y in ys) for p, ys in blocks]
    starts = [0]  # index of each block's first response in the flat output
    for _, ys in blocks:
        starts.append(starts[-1] + len(ys))
    out_len = starts[-1]
    if not blocks:
        return torch.zeros(0, device=device)
    width = max(lengths)
    rows = pack_rows(lengths, width)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    allowed = torch.zeros((len(rows), width, width), dtype=torch.bool)
    src: list[int] = []  # flat (row * width + column) position whose logits predict ...
    tgt: list[int] = []  # ... this token ...
    own: list[int] = []  # ... of this response (its index in the flat output)
    for r, members in enumerate(rows):
        off, base = 0, r * width
        for b in members:
            p, ys = blocks[b]
            P = len(p)
            ids[r, off : off + P] = torch.tensor(p)
            pos[r, off : off + P] = torch.arange(P)
            allowed[r, off : off + P, off : off + P] = torch.ones(P, P, dtype=torch.bool).tril()
            last_prompt = base + off + P - 1
            a = off + P  # where the next response starts
            for k, y in enumerate(ys):
                Y = len(y)
                if Y:
                    ids[r, a : a + Y] = torch.tensor(y)
                    pos[r, a : a + Y] = torch.arange(P, P + Y)
                    allowed[r, a : a + Y, off : off + P] = True
                    allowed[r, a : a + Y, a : a + Y] = torch.ones(Y, Y, dtype=torch.bool).tril()
                    src += [last_prompt] + [base + a + j for j in range(Y - 1)]
                    tgt += y
                    own += [starts[b] + k] * Y
                a += Y
            off = a
        allowed[r, torch.arange(off, width), torch.arange(off, width)] = True  # padding sees itself only
    dtype = next(model.parameters()).dtype
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min).unsqueeze(1)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                   use_cache=False).logits
    src_t, tgt_t, own_t = (torch.tensor(v, dtype=torch.long, device=device) for v in (src, tgt, own))
    # Only the predicting positions go through log_softmax: saves a (rows, width, vocab) tensor.
    tok = torch.log_softmax(logits.reshape(-1, logits.shape[-1])[src_t].float(), dim=-1).gather(-1, tgt_t[:, None])[:, 0]
    return torch.zeros(out_len, device=device, dtype=tok.dtype).index_add(0, own_t, tok)


def sequence_logprobs(model: torch.nn.Module, seqs: list[tuple[list[int], list[int]]], device: torch.device,
                      pad_id: int = 0) -> torch.Tensor:
    """Summed log-prob of each response ``y`` given its prompt ``p``, for ``seqs = [(p, y), ...]``."""
    return block_logprobs(model, [(p, [y]) for p, y in seqs], device, pad_id)


def pair_logprobs(model: torch.nn.Module, pairs: list[tuple[list[int], list[int], list[int]]], device: torch.device,
                  pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) summed log-probs of ``pairs = [(prompt, chosen, rejected), ...]``, the prompt computed once."""
    out = block_logprobs(model, [(p, [c, y]) for p, c, y in pairs], device, pad_id)
    return out[0::2], out[1::2]
