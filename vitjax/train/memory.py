"""How much device memory the compiled train step needs, from XLA's own buffer assignment, checked against what
the device has before the first step: a batch that does not fit stops the run with advice, not with an
out-of-memory error minutes into the first step."""
from __future__ import annotations

from typing import Any, Optional

GiB = 2 ** 30


def step_bytes(stats: Any) -> dict[str, int]:
    """Per device: the step's arguments (state + batch), outputs not written in place of a donated argument,
    temporaries (activations kept for the backward, gradients, workspace) and code."""
    out = {'arguments': stats.argument_size_in_bytes,
           'outputs': stats.output_size_in_bytes - stats.alias_size_in_bytes,
           'temporaries': stats.temp_size_in_bytes, 'code': stats.generated_code_size_in_bytes}
    out['total'] = sum(out.values())
    return out


def device_limit() -> Optional[int]:
    """Bytes jax may allocate on a local device (GPU/TPU report it; CPU does not: None)."""
    import jax
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # backends without memory stats raise instead of returning None
        return None
    return (stats or {}).get('bytes_limit')


def check(stats: Any, c: Any) -> dict[str, int]:
    """Print the step's per-device memory; raise ValueError with advice when it exceeds the device's memory
    (`c.device_memory_gb` when set, e.g. to size a run for another accelerator from this host)."""
    need = step_bytes(stats)
    limit = int(c.device_memory_gb * GiB) or device_limit()
    parts = ', '.join(f'{k} {v / GiB:.2f}' for k, v in need.items() if k != 'total')
    print(f"memory: the train step needs {need['total'] / GiB:.2f} GiB per device ({parts} GiB; batch "
          f'{c.batch_size}, accum_steps {c.accum_steps}, grad_checkpointing {c.grad_checkpointing}, '
          f'{c.parallelism}), ' + (f'{limit / GiB:.1f} GiB available' if limit else
                                   'the device reports no limit'), flush=True)
    if limit and need['total'] > limit:
        advice = [f'--config.accum_steps={2 * c.accum_steps} (micro-batches: the activations shrink with them)']
        if not c.grad_checkpointing:
            advice.append('--config.grad_checkpointing=True (each block recomputed in the backward)')
        if c.parallelism == 'pmap' and need['arguments'] > need['temporaries']:
            advice.append('--config.parallelism=fsdp (the params and Adam moments sharded over the devices)')
        advice.append('a smaller --config.batch_size')
        raise ValueError(f"the train step needs {need['total'] / GiB:.2f} GiB per device and the device has "
                         f'{limit / GiB:.2f} GiB; try ' + ', or '.join(advice))
    return need
