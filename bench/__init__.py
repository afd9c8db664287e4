"""edgebuild's benchmark: `python -m bench` (bench/__main__.py), one module per section in
bench/sections/, the helpers they share in bench/common.py."""
