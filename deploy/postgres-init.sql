-- Run once by the postgres image on an empty data volume (docker-compose.yml): one database per
-- service, owned by POSTGRES_USER.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
CREATE DATABASE cifras;
