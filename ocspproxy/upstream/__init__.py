"""Where answers come from: the Source and Lease seams, and the HTTP client for CA responders."""
