"""Serving what was trained: the whole-catalog index (catalog_index.py, built by the serve_index
stages), query encoders with PyTorch or onnxruntime (encoders.py; onnx_export.py writes the ONNX
towers), and the HTTP app with the search page and the arena (app.py)."""
