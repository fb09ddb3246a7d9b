"""Teachers: creating timm / checkpoint / module teachers, their precision, options and feature sources."""
