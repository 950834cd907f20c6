"""A paged KV cache: fixed-size blocks in a shared pool and a block table per sequence (the PagedAttention idea).

A server that gives every request one contiguous buffer of `max_len` tokens up front reserves memory the request
may never use: most answers end long before the limit. Kwon et al. 2023 ("Efficient Memory Management for Large
Language Model Serving with PagedAttention", the vLLM paper) took the operating system's answer to the same problem:
cut the memory into *blocks* of `block_size` tokens, give each sequence a *block table* (logical block i of the
sequence -> physical block in the pool), and hand a sequence a new block only when its last one is full. A sequence
then leaves at most block_size - 1 slots unused.

Blocks also make sharing cheap. Two sequences whose block tables name the same physical block share its bytes:
requests with a common system prompt, or beams with a common past. A shared block is read-only; a sequence that
must write into one first copies it (*copy-on-write*, as an operating system does with the pages of a forked
process). Every block carries a reference count, the number of sequences whose tables name it; 0 means free.

`BlockPool` is the memory: one (n_blocks, H_kv, block_size, D) tensor per layer for K and one for V, and the
reference counts. `PagedCache` is a `Cache` for one batch of sequences that takes its blocks from a pool; many caches
(one per request) can share one pool. Its `update` writes the new tokens into their slots and returns the sequence's
K/V gathered into one contiguous tensor for attention. That gather is a copy, made so the model stays unchanged:
real PagedAttention kernels read the blocks in place, through the block table.
"""

from __future__ import annotations

from collections import Counter

import torch

from .cache import Cache, _check_beam_idx, _check_fits, _check_layer, _check_new_kv
from .checks import check_int, check_type

__all__ = ["BlockPool", "PagedCache"]


class BlockPool:
    """The memory of a paged cache: `n_blocks` blocks of `block_size` tokens, shared by every sequence that uses it.

    The pool's tensors are allocated once, like a `StaticCache`'s (a server sizes the pool to the GPU memory left
    after the weights). What paging changes is who gets which block, and when.
    """

    def __init__(self, config, n_blocks: int, block_size: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        n_blocks, block_size = check_int("n_blocks", n_blocks, 1), check_int("block_size", block_size, 1)
        self.n_blocks, self.block_size = n_blocks, block_size
        self.n_layer, self.n_kv_head, self.head_dim = config.n_layer, config.n_kv_head, config.head_dim
        shape = (n_blocks, config.n_kv_head, block_size, config.head_dim)  # (N, H_kv, block_size, D)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.ref_counts = [0] * n_blocks  # how many sequences' block tables name each block; 0 = free

    @property
    def n_free(self) -> int:
        return self.ref_counts.count(0)

    @property
    def n_allocated(self) -> int:
        return self.n_blocks - self.n_free

    def allocate(self, n: int) -> list[int]:
        """Hand out `n` free blocks (lowest ids first, so runs are reproducible); each starts with one user."""
        n = check_int("n", n, 0)  # a negative count would slice blocks off the end of the free list
        if n > self.n_free:
            raise ValueError(f"the block pool is exhausted: {n} more blocks needed, {self.n_free} of {self.n_blocks} "
                             f"free (block_size={self.block_size}); make a larger BlockPool or free some sequences")
        blocks = [i for i, count in enumerate(self.ref_counts) if count == 0][:n]
        for block in blocks:
            self.ref_counts[block] = 1
        return blocks

    def share(self, block: int) -> None:
        """One more sequence uses `block`: no bytes move, the reference count goes up."""
        block = check_int("block", block, 0, self.n_blocks - 1)  # -1 would silently name the last block
        if self.ref_counts[block] == 0:
            raise ValueError(f"block {block} is free: only allocated blocks can be shared")
        self.ref_counts[block] += 1

    def release(self, block: int) -> None:
        """One sequence stops using `block`; when nobody does, it is free again."""
        block = check_int("block", block, 0, self.n_blocks - 1)
        if self.ref_counts[block] == 0:
            raise ValueError(f"block {block} is already free")
        self.ref_counts[block] -= 1

    def copy_on_write(self, block: int) -> int:
        """A private copy of a shared `block` (its K and V in every layer) for the sequence about to write into it."""
        (copy,) = self.allocate(1)
        for buffers in (self.keys, self.values):
            for buffer in buffers:
                buffer[copy] = buffer[block]
        self.release(block)
        return copy

    @property
    def bytes_per_block(self) -> int:
        """K and V of `block_size` tokens in every layer: 2 · n_layer · H_kv · block_size · D · bytes."""
        return 2 * self.n_layer * self.keys[0][0].nbytes

    @property
    def nbytes(self) -> int:
        """The whole pool, allocated up front whether or not its blocks are in use."""
        return sum(t.nbytes for t in self.keys + self.values)

    @property
    def allocated_nbytes(self) -> int:
        """Bytes of the blocks some sequence is using right now (a shared block counts once)."""
        return self.n_allocated * self.bytes_per_block


class PagedCache(Cache):
    """K/V of one batch of sequences, stored in blocks of a `BlockPool` through one block table per batch row.

    Memory is taken a block at a time as the sequences grow, so `nbytes` (the blocks held) exceeds `used_nbytes`
    (the tokens stored) by less than one block per row. `fork` starts new sequences that share this one's blocks
    (a common prompt prefix), and `reorder_cache` lets beams share blocks instead of copying them; in both cases the
    first write into a shared block copies it.
    """

    def __init__(self, pool: BlockPool) -> None:
        self.pool = check_type("pool", pool, BlockPool, "a BlockPool")
        self.block_tables: list[list[int]] = []  # one per batch row: logical block i -> physical block id
        self.lengths = [0] * pool.n_layer  # tokens written so far, per layer

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        layer_idx = _check_layer(layer_idx, self.pool.n_layer)
        if self.lengths[layer_idx] == 0:  # a layer's first tokens: checked whole, once
            _check_new_kv(key, value)
        k_pool, v_pool = self.pool.keys[layer_idx], self.pool.values[layer_idx]  # (n_blocks, H_kv, block_size, D)
        _check_fits(key, value, (len(self.block_tables) or key.shape[0], *k_pool.shape[1:]), k_pool.dtype)  # B rows
        if not self.block_tables:  # the first tokens: one (empty) block table per batch row
            self.block_tables = [[] for _ in range(key.shape[0])]
        start, end = self.lengths[layer_idx], self.lengths[layer_idx] + key.shape[-2]
        self._make_room(start, end)  # allocate (or copy-on-write) blocks; the later layers find them ready
        table = torch.tensor(self.block_tables, device=key.device)  # (B, blocks per row)
        positions = torch.arange(start, end, device=key.device)
        blocks, offsets = table[:, positions // self.pool.block_size], positions % self.pool.block_size  # (B, T), (T,)
        k_pool[blocks, :, offsets] = key.transpose(1, 2)  # each new token into its slot: (B, T, H_kv, D)
        v_pool[blocks, :, offsets] = value.transpose(1, 2)
        self.lengths[layer_idx] = end
        return self._gather(k_pool, table, end), self._gather(v_pool, table, end)

    @staticmethod
    def _gather(pool: torch.Tensor, table: torch.Tensor, length: int) -> torch.Tensor:
        """Each row's blocks in table order, joined into one (B, H_kv, length, D) tensor: a copy, see the module doc."""
        B, n_blocks = table.shape
        _, n_kv_head, block_size, head_dim = pool.shape
        blocks = pool[table]  # (B, n_blocks, H_kv, block_size, D)
        return blocks.transpose(1, 2).reshape(B, n_kv_head, n_blocks * block_size, head_dim)[:, :, :length]

    def _make_room(self, start: int, end: int) -> None:
        """Make every row own, alone, the blocks that positions start..end-1 will be written into."""
        block_size = self.pool.block_size
        first, needed = start // block_size, -(-end // block_size)  # blocks touched: first .. needed - 1
        touched = Counter(table[i] for table in self.block_tables for i in range(first, min(needed, len(table))))
        # a block named n times here is copied n times if others use it too, else n - 1 times (the last keeps it)
        copies = sum(n if self.pool.ref_counts[block] > n else n - 1 for block, n in touched.items())
        missing = copies + sum(max(needed - len(table), 0) for table in self.block_tables)
        if missing > self.pool.n_free:  # check before changing anything, so a failed update leaves no trace
            raise ValueError(f"the block pool is exhausted: {missing} more blocks needed for {end} tokens per row, "
                             f"{self.pool.n_free} of {self.pool.n_blocks} free (block_size={block_size}); "
                             "make a larger BlockPool or free some sequences")
        for table in self.block_tables:
            for i in range(first, min(needed, len(table))):
                if self.pool.ref_counts[table[i]] > 1:  # shared: copy before writing
                    table[i] = self.pool.copy_on_write(table[i])
            table.extend(self.pool.allocate(max(needed - len(table), 0)))

    def fork(self) -> PagedCache:
        """A new cache holding the same tokens by sharing this cache's blocks: no K/V is copied, and no block is
        copied until one of the two caches writes into a block they share (copy-on-write)."""
        child = PagedCache(self.pool)
        child.block_tables = [list(table) for table in self.block_tables]
        child.lengths = list(self.lengths)
        child._fed = None if self._fed is None else list(self._fed)  # the same tokens, which `generate` checks
        child._fed_len = self._fed_len
        for block in self._blocks():
            self.pool.share(block)
        return child

    def _blocks(self) -> list[int]:
        return [block for table in self.block_tables for block in table]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.lengths[layer_idx]

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        """Row i takes row beam_idx[i]'s block table: beams that share a parent share its blocks (no copy)."""
        _check_beam_idx(beam_idx, len(self.block_tables) or None)
        old_blocks = self._blocks()
        self.block_tables = [list(self.block_tables[i]) for i in beam_idx.tolist()]
        for block in self._blocks():  # count the new users first, so no kept block is freed on the way
            self.pool.share(block)
        for block in old_blocks:
            self.pool.release(block)
        super().reorder_cache(beam_idx)

    def reset(self) -> None:
        """Give every block back to the pool (shared blocks stay with their other users)."""
        for block in self._blocks():
            self.pool.release(block)
        self.block_tables = []
        self.lengths = [0] * self.pool.n_layer

    @property
    def nbytes(self) -> int:
        """Bytes of the blocks this cache's tables name (each distinct block once, shared or not)."""
        return len(set(self._blocks())) * self.pool.bytes_per_block

    @property
    def used_nbytes(self) -> int:
        """Bytes of the tokens actually stored: B · seq_len K and V vectors per layer."""
        per_token_per_layer = 2 * self.pool.n_kv_head * self.pool.head_dim * self.pool.keys[0].element_size()
        return len(self.block_tables) * sum(self.lengths) * per_token_per_layer
