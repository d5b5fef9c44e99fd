# The export: the grader's code that runs in the student's kernel, after the student's cells.
#
# grader.exporting.export_code sends this module's text, as it is, into the kernel, followed by one
# call of run_export on the kernel's globals and a `del run_export`; the grader imports the same
# module to test it in its own process, and its bytes are part of the execution cache key
# (grader.versioning.EXECUTION_SOURCES). Hence the module's shape: it defines nothing but
# run_export and imports nothing at its top, so the student's names stay as they were; its
# description is this comment, not a docstring, which would become the kernel's __doc__; and it
# has no `from __future__` line (the probe cell starts with a chdir, and such a line must come first).


def run_export(namespace: dict, spec: dict, workdir: str = ".") -> None:
    """Hands back each model's weights (tensors only) and plain values; computes nothing.

    namespace: the kernel's globals; spec: the names and bounds (grader.exporting.export_spec);
    workdir: where the two files go. Its imports are inside so that running this module's text
    in the kernel adds no name but run_export. What it writes is untrusted all the same: the
    grader bounds and validates every byte it reads.
    """
    import json
    import math
    import os

    import numpy as np
    import torch

    arrays, errors, values = {}, {}, {}

    def export_model(role, var):
        model = namespace.get(var)
        if model is None:
            raise NameError(f"name {var!r} is not defined")
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"{var} is a {type(model).__name__}, not a torch.nn.Module")
        total = 0
        for name, tensor in model.state_dict().items():
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"{var}.state_dict()[{name!r}] is not a tensor")
            total += tensor.numel()
            if total > spec["max_elements"]:
                raise ValueError(f"{var} has more than {spec['max_elements']} weights")
            arrays[f"{role}/{name}"] = tensor.detach().to("cpu", torch.float32).numpy()

    for role, var in spec["models"].items():
        try:
            export_model(role, var)
        except Exception as exc:  # the student's objects may raise anything
            errors[role] = f"{type(exc).__name__}: {exc}"[:500]
            for key in [k for k in arrays if k.startswith(role + "/")]:
                del arrays[key]

    def plain(value, depth=0):
        """JSON-able copy of a history (numbers, lists, dicts), or raise."""
        if depth > 4:
            raise TypeError("nested too deeply")
        if isinstance(value, dict):
            return {str(k)[:50]: plain(v, depth + 1) for k, v in list(value.items())[: spec["max_history"]]}
        if isinstance(value, (list, tuple)):
            return [plain(v, depth + 1) for v in list(value)[: spec["max_history"]]]
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value) if math.isfinite(value) else None
        if isinstance(value, str):
            return value[:100]
        raise TypeError(f"unsupported {type(value).__name__}")

    beta = namespace.get(spec["best_beta"])
    try:
        values["best_beta"] = float(beta) if beta is not None else None
    except (TypeError, ValueError):
        errors["best_beta"] = f"{spec['best_beta']} is not a number: {beta!r}"[:200]
    for key, var in spec["histories"].items():
        history = namespace.get(var)
        if history is None:
            continue
        try:
            if hasattr(history, "__len__") and len(history) > spec["max_history"]:
                errors[key] = f"{var} has {len(history)} entries; the first {spec['max_history']} are drawn"
            values[key] = plain(history)
        except Exception as exc:  # a history's items may raise anything too
            errors[key] = f"{type(exc).__name__}: {exc}"[:200]
    np.savez(os.path.join(workdir, spec["weights_file"]), **arrays)
    with open(os.path.join(workdir, spec["values_file"]), "w") as handle:
        json.dump({"errors": errors, "values": values}, handle)
