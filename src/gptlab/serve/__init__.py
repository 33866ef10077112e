"""`gptlab serve`: a local web page to generate text and look inside the model while it writes
(analysis.py computes, app.py serves, static/ is the page)."""
