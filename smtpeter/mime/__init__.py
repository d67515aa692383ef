"""MIME at the byte level: header fields, the part tree, RFC 2047 encoded-words, line lengths."""
