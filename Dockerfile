# One image for the Airflow services, the Celery workers and JupyterLab: the official Airflow
# image extended as its documentation advises (pip install as the airflow user, with
# apache-airflow named at its version so pip cannot move it), plus the medallion package.
# Only what runs: requirements.txt. The test tools and the embedded services of `make run`
# (requirements-dev.txt) stay out. The project itself is bind-mounted at /opt/medallion at run
# time, so the editable install below follows the checkout.
ARG AIRFLOW_VERSION=3.3.2
FROM apache/airflow:${AIRFLOW_VERSION}-python3.11
ARG AIRFLOW_VERSION

USER root
RUN install -d -o airflow -g 0 -m 775 /opt/medallion
USER airflow

COPY --chown=airflow:0 requirements.txt pyproject.toml /opt/medallion/
COPY --chown=airflow:0 medallion /opt/medallion/medallion
# umask 0002: what pip creates stays writable for group 0, as in the base image, because the
# containers run as "${AIRFLOW_UID}:0" (e.g. Jupyter's runtime folder under ~/.local/share,
# where papermill's kernels write their connection files).
RUN umask 0002 \
 && pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /opt/medallion/requirements.txt \
 && pip install --no-cache-dir --no-deps -e /opt/medallion
ENV MEDALLION_HOME=/opt/medallion
