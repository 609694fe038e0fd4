"""Device -> host for the rows of this process, the one place extraction touches torch_xla's sharding.

Under SPMD a step's outputs are global arrays sharded along the batch over every chip of every host. A plain `.cpu()` on one runs an extra replicate
computation (`ReplicateShardedData` in torch_xla's counters, and a compile of it) and hands every host every row, so each host would write the whole batch.
Here each host reads only its addressable shards (`_get_local_shards`, one call for all tensors of a step), keeps one replica of each, and concatenates them in
row order: with batch-sharded inputs (`minibatch=True` over hosts) those are exactly the rows this host loaded. Outputs are pinned to the batch sharding
inside the step (`constrain_rows`), so the partitioner cannot leave them replicated. Elsewhere (one XLA device, PJRT processes, CUDA, CPU) the process's
outputs are its own rows: one batched copy.

Only call `to_host` on outputs of a step that has been launched (after the compiled step returns); under SPMD it waits for the device to finish its queue.
"""

import torch

from utils.device import Runtime


def _is_spmd(runtime: Runtime) -> bool:
    return runtime.kind == "xla" and getattr(runtime, "mesh", None) is not None


def constrain_rows(runtime: Runtime, t_b: torch.Tensor) -> torch.Tensor:
    """Inside the step: shard `t_b` along its first (batch) axis over the mesh, as the inputs are; the identity outside SPMD."""
    if not _is_spmd(runtime):
        return t_b
    import torch_xla.distributed.spmd as xs

    xs.mark_sharding(t_b, runtime.mesh, (runtime.axis,) + (None,) * (t_b.ndim - 1))
    return t_b


def to_host(runtime: Runtime, tensors: dict[str, torch.Tensor], rows_per_process: int) -> dict[str, torch.Tensor]:
    """CPU tensors of this process's `rows_per_process` rows of every output, in row order."""
    names = list(tensors)
    values = [tensors[k] for k in names]
    if runtime.kind == "xla":
        import torch_xla

        if _is_spmd(runtime):
            # Shard data of a step still executing is not readable yet (`_get_local_shards` fails rather than waits, unlike a copy): wait for the
            # device's queue first. Only the writer thread waits; the loop keeps launching steps.
            runtime.wait()
            out = _local_rows(torch_xla, values, runtime.rank, rows_per_process)
        else:
            out = torch_xla._XLAC._xla_get_cpu_tensors(values)
    else:
        out = [v.detach().cpu() for v in values]
    for name, t in zip(names, out, strict=True):
        assert t.shape[0] == rows_per_process, f"{name}: {t.shape[0]} rows on the host, expected {rows_per_process}"
        assert t.dtype == tensors[name].dtype, f"{name}: {t.dtype} on the host, {tensors[name].dtype} on the device"
    return dict(zip(names, out, strict=True))


def _local_rows(torch_xla, values: list[torch.Tensor], rank: int, rows: int) -> list[torch.Tensor]:
    shards = torch_xla._XLAC._get_local_shards(values)
    replicas = torch_xla._XLAC._get_local_shard_replica_and_indices(values)
    out = []
    for shard_list, replica_list in zip(shards, replicas, strict=True):
        parts = []
        for (data, _device), (replica, indices) in zip(shard_list, replica_list, strict=True):
            if replica != 0:
                continue  # the same rows on another device
            if indices is Ellipsis:  # replicated: the whole global array on every device; this host's rows are its block of the batch
                parts = [(0, data[rank * rows : (rank + 1) * rows])]
                break
            parts.append((indices[0].start, data))
        parts.sort(key=lambda p: p[0])
        starts = [p[0] for p in parts]
        assert all(b - a == len(p[1]) for a, b, p in zip(starts[:-1], starts[1:], parts[:-1], strict=True)), (
            f"local shards are not contiguous rows: starts {starts}"
        )
        out.append(torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1])
    return out


def replicated_transfers(runtime: Runtime) -> int | None:
    """How often a sharded tensor was gathered to the host in full so far (torch_xla's `ReplicateShardedData` counter); None off XLA."""
    if runtime.kind != "xla":
        return None
    import torch_xla.debug.metrics as met

    return int(met.counter_value("ReplicateShardedData") or 0)
