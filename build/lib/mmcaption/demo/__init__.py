"""The offline demo wing: synthetic shapes, tiny backbones, the demo run and its held-out evaluation.

It imports the core (model, data, module, CLI) and the core never imports it: everything here exists
to show, without a GPU or a download, that the real code path learns to see.
"""

__all__ = ["main", "prepare_demo_assets", "run_demo", "scalar_series"]


def __getattr__(name: str):
    # Imported on first use: `mmcaption-demo --help` reads only mmcaption.demo.options.
    if name in __all__:
        from mmcaption.demo import run

        return getattr(run, name)
    raise AttributeError(name)
