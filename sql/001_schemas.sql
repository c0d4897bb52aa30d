-- Layers you can see: transit tables stay in public (the loader's landing zone), the star schema
-- lives in staging, and what the pipeline records about itself lives in audit.
create schema if not exists staging;
create schema if not exists audit;
