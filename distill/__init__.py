"""toonify-fast distillation: the StyleGAN2 teacher, blending, paired data, the pix2pixHD
student, training and ONNX export. Needs the `distill` extra (torch).

    from distill import load_generator
    G = load_generator("ffhq.pkl")          # NVlabs .pkl, rosinality .pt, TF .pkl or .safetensors
"""


def __getattr__(name):
    if name == "load_generator":
        from distill.checkpoint import load_generator
        return load_generator
    if name == "load_discriminator":
        from distill.discriminator import load_discriminator
        return load_discriminator
    raise AttributeError(name)
