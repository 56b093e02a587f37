"""Synthetic chest X-ray sets in NIH's exact layout: drawing, the demo set, the look-alike of the full index."""
