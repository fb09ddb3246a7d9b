"""Images and their crops: listing (folders, lists, tar shards), decoding, class spaces, crop sampling and replay."""
