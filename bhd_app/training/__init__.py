"""Training of the edge-to-image model on the target domain alone (sections 3.3-3.4).

``data`` builds the target-domain images, brain masks and edge maps; ``trainer`` samples
multi-stride patches and fits the velocity field (``scanner_changes`` alters the starts of
some paths); ``validation`` scores a model on traveling subjects whose scanner changes are
known; ``export`` writes the trained model and its card.
"""
