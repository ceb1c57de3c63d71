"""Generative attribute extraction: image in, attribute JSON out.

The offline default VLM is assembled from packaged pretrained parts: an image backbone
(core/backbones.py, frozen), a projector whose tag heads turn its features into one
probabilistic visual token per attribute (model.py), and SmolLM2-135M-Instruct (language.py)
cut to `vlm.layers` and tuned with LoRA (train.py). template.py turns attribute values into the
JSON target and back; decode.py decodes under the template (only the values vary); extract.py
runs it, or free generation with its validity counted."""
