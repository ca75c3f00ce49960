"""toonify-fast runtime: run an exported student with ONNX Runtime. No torch, no distill.

    from runtime import Toonifier
    toon = Toonifier("exports/toonify.onnx").run([face_rgb_uint8])[0]
"""
__version__ = "0.1.0"


def __getattr__(name):
    # Imported on first use so that `toonify-fast --help` does not pay for loading ONNX Runtime.
    if name == "Toonifier":
        from runtime.engine import Toonifier
        return Toonifier
    raise AttributeError(name)
