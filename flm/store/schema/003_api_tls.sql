-- An API beyond loopback serves HTTPS unless it says insecure; its own certificate and
-- key (PEM file paths) override the settings' tls_cert / tls_key.
ALTER TABLE apis ADD COLUMN insecure INTEGER NOT NULL DEFAULT 0;
ALTER TABLE apis ADD COLUMN tls_cert TEXT;
ALTER TABLE apis ADD COLUMN tls_key TEXT
