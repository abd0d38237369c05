"""PedCorpus: the embedded knowledge base and the generator that turns it into training data."""
