"""Worker processes answering hits on the same port (``workers`` > 1): their messages, pool and process."""
