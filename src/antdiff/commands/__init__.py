"""Sub-commands of the ``antdiff`` CLI (upper layer; the core never imports these)."""
