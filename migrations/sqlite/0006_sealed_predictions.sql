-- Encryption at rest of prediction payloads: with a data key configured, `request` and
-- `response` stay NULL and `sealed` holds both, encrypted (AES-256-GCM: nonce, ciphertext, tag),
-- with `data_key` naming the key.
ALTER TABLE predictions ADD COLUMN data_key TEXT;
ALTER TABLE predictions ADD COLUMN sealed BLOB;
