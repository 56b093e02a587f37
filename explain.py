"""Explain a trained classifier's predictions with Grad-CAM: ``python explain.py ckpt_path=CKPT inputs=PATH``.

See ``conf/explain.yaml`` and docs/explanations.md. Exit status: 0 when every image was explained,
1 when some inputs could not be read (the others are still written), 2 when nothing could run (missing or
incompatible checkpoint, inputs that do not exist).
"""

from pneumo.cli.explain import main

if __name__ == "__main__":
    main()
