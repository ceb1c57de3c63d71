"""Generative attribute extraction: image in, attribute JSON out.

The offline default VLM is assembled from packaged pretrained parts: an image backbone
(attributes/backbone.py, frozen), a trained projector that turns its features into a few input
embeddings of a language model, and SmolLM2-135M-Instruct (language.py) tuned with LoRA.
template.py turns attribute values into the JSON target and back, and decodes under the
template when free generation is not valid JSON of the schema (the repair, counted)."""
