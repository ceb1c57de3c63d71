"""VLM cleaning through the OpenAI Batch API (clean.backend: openai_batch): requests.py builds the
requests and their files, schema.py says what an answer must hold, store.py is the SQLite ledger
that makes every step resumable, workflow.py runs prepare / dispatch / monitor / finalize."""

# answer fields that fill catalog columns of the same name (clean_title fills `title`)
ATTRIBUTE_FIELDS = ["category", "style", "material", "color", "pattern"]
