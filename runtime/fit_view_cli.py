"""``dn2 fit`` through views and patch features (``--mode``, ``--view``, ``--roi``): the parsed
arguments handed to ``dn2.runtime.patchfit.fit_view_bundle``, or None for the global-mode crop
fit that ``dn2.runtime.fit.fit_bundle`` does."""

from __future__ import annotations

from typing import Optional

from .errors import Dn2Error


def view_fit(a) -> Optional[str]:
    """Fit through views / patches when asked (or when the model has patches): else None."""
    from .modelmeta import patch_spec, read_model_meta
    from .views import View

    view = View.parse(a.view, a.roi)
    mode = a.mode
    if mode == "auto":
        has = patch_spec(read_model_meta(a.model), a.model) is not None
        mode = "both" if has else "global"
    if mode == "global" and view == View():
        return None
    extra = [
        n
        for n, v in (
            ("--clean", a.clean),
            ("--kmeans", a.kmeans),
            ("--group-size", a.group_size),
            ("--group-dirs", a.group_dirs),
            ("--val-normal", a.val_normal),
            ("--l2norm-select", a.l2norm_select),
            ("--ray", getattr(a, "ray", None)),
            ("--augment", getattr(a, "augment", "none") not in (None, "none", "auto")),
        )
        if v
    ]
    if extra or a.threshold_method != "fpr":
        raise Dn2Error(
            f"{', '.join(extra) or '--threshold-method'}: not available with "
            f"--mode {mode} / --view {view}; expected the global mode with the crop "
            f"view (dn2-fit --mode global)"
        )
    from .patchfit import DEFAULTS, fit_view_bundle

    out = fit_view_bundle(
        a.model,
        a.output,
        a.normal,
        mode=mode,
        view=view,
        k=a.k,
        fpr=a.fpr,
        l2norm=a.l2norm,
        index=a.index,
        batch=a.batch,
        threads=a.threads,
        providers=a.providers,
        seed=a.seed,
        progress=not a.quiet,
        jpeg_draft=a.jpeg_draft,
        bank_size=a.patch_bank or DEFAULTS["bank_size"],
        topk=a.patch_topk or DEFAULTS["topk"],
        prune=DEFAULTS["prune"] if a.patch_prune is None else a.patch_prune,
        cell_step=DEFAULTS["cell_step"]
        if getattr(a, "patch_cell_step", None) is None
        else a.patch_cell_step,
        combine_rule=a.combine,
        block_weights=getattr(a, "patch_weights", "blocks") == "blocks",
        reduction="max" if a.patch_topk == 1 else DEFAULTS["reduction"],
    )
    return str(out)
