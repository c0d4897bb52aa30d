# One image for the Airflow services and JupyterLab: Airflow 3.3.2 plus the pipeline's
# pinned requirements and the medallion module (the project itself is mounted at runtime).
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:root requirements.txt pyproject.toml /opt/medallion/
COPY --chown=airflow:root medallion /opt/medallion/medallion
RUN pip install --no-cache-dir -r /opt/medallion/requirements.txt \
 && pip install --no-cache-dir --no-deps -e /opt/medallion
ENV MEDALLION_HOME=/opt/medallion
