"""A decoding loop whose key/value cache grows in phases instead of being its full length
from the first step.

Each step's attention reads every slot of the cache, filled or not (a slot not yet written is
masked, but its keys and values still pass through the products). A loop that makes many
tokens from a short prompt therefore reads, on average, about twice the cache it needs. Where
the cache is large against the weights that is most of a step: gpt2_small in bfloat16 at batch
32 on a 2-core CPU made 32 + 480 tokens at 0.96x PyTorch's eager `generate()`, whose cache
grows by one slot a step, against 1.1-1.2x at 32 + 64.

So such a loop runs in phases, each one `lax.while_loop` over a cache of fixed length, the
length doubling from phase to phase up to prompt + max_new_tokens; between phases the cache is
copied into the longer one (at batch 32 there, 183 -> 240-246 tokens/s, the same tokens). Shapes
stay static, but each phase is traced and compiled (gpt2_small's loop above: 2.0-2.5 s in one
phase, 3.8-4.0 s in three), so a loop has phases only where the full cache holds at least WORTH
bytes per byte of the weights (gpt2_small at 512 slots: batch 16 and up), and no phase is
shorter than SMALLEST slots.
"""

import math

import jax

SMALLEST = 128
WORTH = 1.0


def phases(decoder, prepared, rows: int, prompt_len: int, new: int) -> list[int]:
    """`lengths` for `decoder` making `new` tokens after `prompt_len` for `rows` sequences with
    the weights `prepared` (`decoder.prepare`). The cache holds all of them but the last: no
    token after it needs its keys and values."""
    def nbytes(tree):
        return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))
    cache = jax.eval_shape(lambda: decoder.init_cache(rows, prompt_len + new - 1))
    return lengths(prompt_len, new - 1, nbytes(cache) / nbytes(prepared["params"]))


def lengths(prompt_len: int, new: int, cache_share: float) -> list[int]:
    """The cache lengths of the phases of a loop that writes `new` tokens into the cache after
    `prompt_len`, ascending: prompt_len + new last, and where `cache_share` (the bytes of that
    cache over those of the weights) is at least WORTH, each one before it half the next
    (rounded up) while that holds at least SMALLEST slots, the prompt and one new token."""
    out = [prompt_len + new]
    while cache_share >= WORTH and (half := -(-out[0] // 2)) >= max(SMALLEST, prompt_len + 1):
        out.insert(0, half)
    return out


def while_loop(decoder, running, body_for, carry, lengths: list[int], prompt_len: int):
    """`lax.while_loop` over `carry` = (i, cache, state) in phases of the cache `lengths`:
    phase j runs the steps i whose token's slot (prompt_len + i) fits in lengths[j] slots,
    with the body `body_for(lengths[j])` returns, on `carry`'s cache grown by `decoder.grow`
    to lengths[j] slots. `running(carry)` may end the loop earlier (the later phases then run
    no step)."""
    for j, length in enumerate(lengths):
        i, cache, state = carry
        if j:
            cache = decoder.grow(cache, length)
        steps = length - prompt_len
        carry = jax.lax.while_loop(lambda c: (c[0] < steps) & running(c), body_for(length), (i, cache, state))
    return carry
