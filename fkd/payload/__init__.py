"""What a store keeps per crop: the FKD label schemes and their codec, and the embedding payload's spec and codec."""
